#!/usr/bin/env bash
# Fetch, once, local copies of the JavaScript that the rendered book loads from CDNs, so the
# browser test (tests/test_browser.py) can serve them with no internet:
#   requirejs@2.3.4                      (ipywidgets loader, see nb_ipywidgets_js in _config.yml)
#   @jupyter-widgets/html-manager@1.0.6  (embed-amd.js, ipywidgets 8 static widgets)
#   mathjax@3.2.2                        (Sphinx's mathjax@3 es5/tex-mml-chtml.js, and plotly's
#                                          cdnjs mathjax/3.2.2/es5/tex-svg.min.js)
# plotly.js itself comes from the plotly Python package (package_data/plotly.min.js).
# Packages come from the npm registry with `npm pack` (tarball only, no dependencies) and are
# unpacked to $BGCN_JS_CACHE/npm/<name>/ (default ~/.cache/bgcn-js). Idempotent.
set -euo pipefail
CACHE="${BGCN_JS_CACHE:-$HOME/.cache/bgcn-js}"
PKGS=("requirejs@2.3.4" "@jupyter-widgets/html-manager@1.0.6" "mathjax@3.2.2")
command -v npm >/dev/null || { echo "fetch_js.sh: npm not found (apt-get install -y npm)" >&2; exit 1; }
mkdir -p "$CACHE/npm" "$CACHE/tgz"
for spec in "${PKGS[@]}"; do
  name="${spec%@*}"; version="${spec##*@}"
  dest="$CACHE/npm/$name"
  if [[ -f "$dest/package.json" ]] && grep -q "\"version\": *\"$version\"" "$dest/package.json"; then
    continue
  fi
  tgz=$(cd "$CACHE/tgz" && npm pack --silent "$spec" | tail -n 1)
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  tar -xzf "$CACHE/tgz/$tgz" -C "$dest.tmp" --strip-components=1
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  echo "fetch_js.sh: $spec -> $dest"
done
echo "fetch_js.sh: JS cache ready in $CACHE"
