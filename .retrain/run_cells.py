"""Run a lecture's code cells in one namespace with RETRAIN = True, as Run All would, but go on past a failing cell (logged),
so one assertion against an old record cannot stop the long RETRAIN cells after it."""
import json, re, sys, time, traceback, os
os.environ.setdefault("MPLBACKEND", "Agg")
path = sys.argv[1]
nb = json.load(open(path))
ns = {"__name__": "__main__"}
slow_failed = []
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
for i, c in enumerate(nb["cells"]):
    if c["cell_type"] != "code": continue
    src = ''.join(c["source"])
    if re.search(r"^#\|\s*(default_exp|hide_input)", src, re.M) and "import" not in src and "RETRAIN" not in src: continue
    src = re.sub(r"^(RETRAIN|FULL_SIZE) = False", r"\1 = True", src, flags=re.M)
    lines = [l for l in src.splitlines() if not l.lstrip().startswith(("%", "!"))]
    slow = src.startswith("#| slow")
    t0 = time.time()
    try:
        exec(compile("\n".join(lines), f"{os.path.basename(path)}[{i}]", "exec"), ns)
        status = "ok"
    except Exception:
        status = "FAILED"; traceback.print_exc()
        if slow: slow_failed.append(i)
    plt.close("all")
    print(f"== cell {i} {'(slow) ' if slow else ''}{status} in {time.time() - t0:.0f} s: {src.splitlines()[0][:80] if src else ''}", flush=True)
print("slow cells failed:", slow_failed, flush=True)
sys.exit(1 if slow_failed else 0)
