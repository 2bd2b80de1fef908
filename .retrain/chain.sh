#!/bin/bash
# every derived RETRAIN on the branch, one after another (2 threads each), logs in /tmp/w24/chain/
source /work/main/.venv/bin/activate
export PYTHONPATH=/work/w24 SDCOURSE_CACHE=/tmp/x24 HF_HUB_OFFLINE=1 MPLBACKEND=Agg
mkdir -p /tmp/w24/chain; cd /work/w24
gate() { while [ -e /tmp/w24/gate ]; do sleep 10; done; }  # touch /tmp/w24/gate to hold the next job (e.g. while CI runs)
run() { gate; echo "$(date +%T) start $1" >> /tmp/w24/chain/progress; "${@:2}" > /tmp/w24/chain/$1.log 2>&1; local rc=$?; echo "$(date +%T) end $1 rc=$rc" >> /tmp/w24/chain/progress; return $rc; }
[ -e /tmp/w24/chain/07.done ] || { run 07 python /tmp/w24/l07_derived.py && touch /tmp/w24/chain/07.done; }
for nb in 08_sampling 12_evaluation 10_lora 14_control 13_personalisation 15_fewer_steps; do
  [ -e /tmp/w24/chain/$nb.done ] || { run $nb python /tmp/w24/run_cells.py nbs/$nb.ipynb && touch /tmp/w24/chain/$nb.done; }
done
