#!/usr/bin/env bash
# The main job end to end on the embedded synthetic dataset (no download): every step is a plain CLI call.
set -euo pipefail
OUT=${1:-demo}
mkdir -p "$OUT"
echo "== synthetic heads in the 300W-LP and AFLW2000 formats"
hpe-data synth --format 300w-lp --out "$OUT/synth_300wlp" --count 240 --seed 1
hpe-data synth --format aflw2000 --out "$OUT/synth_aflw2000" --count 60 --seed 2
echo "== import into manifests"
hpe-data import --dataset 300w-lp --root "$OUT/synth_300wlp" --out "$OUT/manifests/train.parquet"
hpe-data import --dataset aflw2000 --root "$OUT/synth_aflw2000" --out "$OUT/manifests/test.parquet"
echo "== preview"
hpe-data preview --manifest "$OUT/manifests/train.parquet" --out "$OUT/preview_train.jpg" --n 16
echo
echo "manifest: $OUT/manifests/train.parquet"
echo "preview:  $OUT/preview_train.jpg"
