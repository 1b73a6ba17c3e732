"""The page ``dvc plots show`` fills (``.dvc/config``: ``plots.html_template``), built by the
``plots_page`` stage of dvc.yaml: ``python -m recpipe.plots_page views/plots_page.html``.

DVC's own page loads Vega from a CDN, so it is blank offline. This one carries Vega, Vega-Lite and
Vega-Embed inline (the bundle of the vl-convert-python package), so the plots render with no network.
DVC replaces ``{plot_divs}`` and ``{refresh_tag}``; ``{scripts}`` (its CDN tags) is left out on purpose.
"""

from __future__ import annotations

import sys
from pathlib import Path

from recpipe.io import atomic_file

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>recpipe plots</title>
<script type="text/javascript">
__BUNDLE__
</script>
<style>body {font-family: sans-serif;} table {border-spacing: 15px;}</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""
VEGA_LITE_VERSION = "5.21"  # DVC's plot templates are Vega-Lite v5 specs


def page() -> str:
    """The offline HTML template (about 0.9 MB: the Vega libraries inline); the same bytes every time."""
    import vl_convert

    # The stub makes ``snippet`` required; at runtime it is optional (default: the globals snippet).
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)  # type: ignore[call-arg]
    bundle = bundle.replace("</script", "<\\/script")
    return PAGE.replace("__BUNDLE__", bundle)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m recpipe.plots_page OUTPUT.html", file=sys.stderr)
        return 2
    with atomic_file(Path(argv[0])) as tmp:
        tmp.write_text(page(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
