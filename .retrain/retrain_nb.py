"Run a lecture as a learner would with RETRAIN = True: a copy of the notebook with the switch on, under nbdev-test --flags slow."
import json, subprocess, sys, os, re
from pathlib import Path
src = Path(sys.argv[1]); root = src.parent.parent
nb = json.loads(src.read_text())
hits = 0
for c in nb["cells"]:
    s = ''.join(c["source"])
    if c["cell_type"] == "code" and re.match(r"^RETRAIN = False", s):
        c["source"] = [re.sub(r"^RETRAIN = False", "RETRAIN = True", s)]; hits += 1
assert hits == 1, hits
dst = src.parent / f"_retrain_{src.name}"
dst.write_text(json.dumps(nb))
try:
    r = subprocess.run(["nbdev-test", str(dst), "--flags", "slow", "--cell-timeout", "0", "--do-print"], cwd=root)
finally:
    dst.unlink()
sys.exit(r.returncode)
