import sys, time, resource, tempfile, shutil
from pathlib import Path
from slidestream.engine import config
from slidestream.engine.runner import extract, read_cohort
p = config.load(config.example("liu2020"))
coh = read_cohort(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1
if n > 1:
    from dataclasses import replace
    coh = [replace(coh[0], slide_id=f"c{i}", patient_id=f"c{i}") for i in range(n)]
tmp = Path(tempfile.mkdtemp())
out = []
for r in range(6):
    shutil.rmtree(tmp / "s", ignore_errors=True)
    r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
    extract(p, coh, tmp / "s", threads=2, qa=False, progress=False)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out.append((time.perf_counter() - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt))
import statistics as st
print(sys.argv[0].split('/')[2] if False else '', "wall %.3f usr %.3f sys %.3f faults %d" % tuple(st.median(x[i] for x in out[1:]) for i in range(4)))
