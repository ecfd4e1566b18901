#!/usr/bin/env bash
# The main job end to end on the embedded synthetic dataset (no download): every step is a plain CLI call.
set -euo pipefail
OUT=${1:-demo}
M="$OUT/manifests"
mkdir -p "$M"
step() { printf '\n== %s\n' "$*"; }

step "synthetic heads in the on-disk formats of 300W-LP (train) and AFLW2000 (held-out test)"
hpe-data synth --format 300w-lp  --out "$OUT/synth_300wlp"   --count 240 --seed 1 --workers 2
hpe-data synth --format aflw2000 --out "$OUT/synth_aflw2000" --count 60  --seed 2 --workers 2

step "import into manifests (one row per face, R_cv convention)"
hpe-data import --dataset 300w-lp  --root "$OUT/synth_300wlp"   --out "$M/train.parquet" --workers 2
hpe-data import --dataset aflw2000 --root "$OUT/synth_aflw2000" --out "$M/test.parquet"  --workers 2

step "occlusion data: synthetic face masks rendered onto the landmarks"
hpe-data build-masked --manifest "$M/test.parquet" --out "$M/test_masked.parquet" \
    --images-dir "$OUT/images_masked" --seed 3 --workers 2

step "pose-consistent in-plane rotations (+-45 degrees) and their statistics"
hpe-data rotate --manifest "$M/train.parquet" --range 45 --out "$M/train_rot45.parquet" \
    --images-dir "$OUT/images_rot45" --seed 4 --workers 2
hpe-data stats --manifest "$M/train_rot45.parquet" --compare "$M/train.parquet" --out "$OUT/stats_rot45"

step "contact sheets (landmarks, boxes, pose axes drawn from the stored rotation)"
hpe-data preview --manifest "$M/train.parquet"       --out "$OUT/preview_train.jpg"  --n 16
hpe-data preview --manifest "$M/test_masked.parquet" --out "$OUT/preview_masked.jpg" --n 16
hpe-data preview --manifest "$M/train_rot45.parquet" --out "$OUT/preview_rot45.jpg"  --n 16

step "train the one-stage network on CPU (full frames, 160 px crops; validation on the held-out AFLW2000-format set)"
hpe-train --manifest "$M/train.parquet" --val-manifest "$M/test.parquet" --out "$OUT/run" \
    --epochs "${DEMO_EPOCHS:-110}" --batch-size 16 --image-size 160 --val-size 320 --val-every 110 \
    --optimizer adamw --lr 5e-3 --w-pose 15 --rotate-prob 0.5 --rotate-max 30 --workers 0 --seed 0

step "evaluate on the held-out synthetic faces, clean and masked (full frames, no crop)"
hpe-eval --checkpoint "$OUT/run/best.pt" --manifest "$M/test.parquet" --manifest "$M/test_masked.parquet" \
    --image-size 320 --out "$OUT/report"

cat <<MSG

== done
manifests:  $M/{train,test,test_masked,train_rot45}.parquet
previews:   $OUT/preview_{train,masked,rot45}.jpg
statistics: $OUT/stats_rot45/
run:        $OUT/run/ (best.pt, last.pt, metrics.csv)
report:     $OUT/report/ (report.json, summary.md, faces.parquet, plots)
MSG
