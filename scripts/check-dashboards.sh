#!/usr/bin/env bash
# Type-checks shunt's Grafana dashboards (deploy/grafana/*.json) against Grafana's published
# schema: each becomes a TypeScript object literal typed as @grafana/schema's Dashboard (excess
# properties, wrong types and missing required fields are errors), compiled with tsc --noEmit
# --strict. Offline: the npm packages come from scripts/setup.sh's cache
# (/var/cache/shunt-tools/npm). Usage: check-dashboards.sh [WORK_DIR]. Run by ctest (unit).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
npm_cache=${SHUNT_NPM_CACHE:-/var/cache/shunt-tools/npm}
if [ ! -x "$npm_cache/node_modules/.bin/tsc" ] || [ ! -d "$npm_cache/node_modules/@grafana/schema" ]; then
  echo "check-dashboards: $npm_cache has no typescript or @grafana/schema (run scripts/setup.sh)" >&2
  exit 1
fi
work=${1:-$(mktemp -d)}
mkdir -p "$work"
ln -sfn "$npm_cache/node_modules" "$work/node_modules"
files=()
for json in "$repo"/deploy/grafana/*.json; do
  name=$(basename "$json" .json)
  {
    echo 'import type { Dashboard } from "@grafana/schema";'
    printf 'export const dashboard: Dashboard = '
    cat "$json"
    echo ';'
  } > "$work/$name.ts"
  files+=("\"$name.ts\"")
done
cat > "$work/tsconfig.json" <<JSON
{"compilerOptions": {"strict": true, "noEmit": true, "target": "es2020", "module": "nodenext",
  "moduleResolution": "nodenext", "skipLibCheck": true},
 "files": [$(IFS=,; echo "${files[*]}")]}
JSON
cd "$work"
"$npm_cache/node_modules/.bin/tsc" -p tsconfig.json
echo "check-dashboards: ${#files[@]} dashboards match @grafana/schema $(node -p "require('$npm_cache/node_modules/@grafana/schema/package.json').version")"
