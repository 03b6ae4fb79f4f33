# The CLI on a GPU: --device of train, promote (a first version, then the gate on the test split),
# landmarks compare and train, apply and landmarks apply, on small synthetic data.
# Usage (repository root): bash docs/examples/cuda-check/cli_check.sh [cuda|cpu] [NEW_WORK_DIR]  (PYTHON: the
# project's Python, e.g. .venv/bin/python)
set -euo pipefail
DEV=${1:-cuda}; W=${2:-$(mktemp -d)}; mkdir -p "$W"; py=${PYTHON:-python3}
$py - "$W" <<'PY'
import sys
from pathlib import Path
from ModelSelectorLib.datasets import make_synthetic_msd
from ModelSelectorLib.datasets.landmarks import make_synthetic_cxr
from ModelSelectorLib.ranking.sweep import make_split
w = Path(sys.argv[1])
msd = make_synthetic_msd(w / "msd", n_cases=8, profile="ct", seed=0)
train_dir, _, split = make_split(msd, w / "split", test_fraction=0.5, seed=1, selection_fraction=0.1)
(w / "paths.txt").write_text(f"{train_dir}\n{split}\n")
make_synthetic_cxr(w / "cxr", n_labelled=10, n_unlabelled=3, width=72, height=60, seed=0)
PY
TRAIN=$(sed -n 1p $W/paths.txt); SPLIT=$(sed -n 2p $W/paths.txt)
ms="$py -m ModelSelectorLib"
printf "channels: [8, 16, 32]\nroi_size: [16, 16, 16]\ntarget_spacing: [2.0, 2.0, 3.0]\nbatch_size: 2\nnum_samples: 2\nval_interval: 2\nnum_threads: 2\n" > $W/t.yaml
$ms train --dataset $TRAIN --name disks --out $W/cands --config $W/t.yaml --epochs 4 --device $DEV 2>/dev/null
$ms promote --zoo $W/zoo --task disks --candidate $W/cands/models/disks/0.1.0 --split $SPLIT --device $DEV 2>/dev/null
$ms train --dataset $TRAIN --name disks --out $W/cands --config $W/t.yaml --epochs 6 --seed 1 --device $DEV 2>/dev/null
$ms promote --zoo $W/zoo --task disks --candidate $W/cands/models/disks/0.1.1 --split $SPLIT --device $DEV 2>/dev/null || echo "(refused: exit $?)"
$ms landmarks compare --data $W/cxr --out $W/grid --quick --device $DEV 2>/dev/null | tail -2
$ms landmarks train --data $W/cxr --zoo $W/lmzoo --quick --device $DEV 2>/dev/null
$ms apply --zoo $W/zoo --model disks $(ls $W/msd/imagesTr/*.nii.gz | head -1) --out $W/a.seg.nrrd --device $DEV 2>/dev/null
$ms landmarks apply --zoo $W/lmzoo --model dx-chest-landmarks $W/cxr/c000.png --out $W/l.mrk.json --device $DEV 2>/dev/null
$ms apply --model dx-chest-landmarks Resources/samples/cxr_chest.png --out $W/s.mrk.json --device $DEV 2>/dev/null
echo "CLI on $DEV: all commands ran"
