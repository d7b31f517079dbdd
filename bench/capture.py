"""Cost of capturing decoder output per read (engine/chatter.py) vs plain reads, on one slide (default /tmp/bi/bench8k.svs)."""
import time, json, shutil, contextlib, statistics
from slidestream.engine import config, runner, chatter, slide as sl
from slidestream.engine.runner import extract, read_cohort
p = config.load("schemas/examples/liu2020.json")
cohort = read_cohort(__import__("sys").argv[1] if len(__import__("sys").argv) > 1 else "/tmp/bi/bench8k.svs")
def plain_read_checked(self, x, y, size0, out_size):
    return self.read(x, y, size0, out_size), ""
orig = sl.Slide.read_checked, chatter.CAPTURE.start, chatter.CAPTURE.stop
res = {"on": [], "off": []}
for rep in range(15):
    for mode in ("off", "on"):
        if mode == "off":
            sl.Slide.read_checked = plain_read_checked
            chatter.CAPTURE.start = lambda: None; chatter.CAPTURE.stop = lambda: None
        else:
            sl.Slide.read_checked, chatter.CAPTURE.start, chatter.CAPTURE.stop = orig
        shutil.rmtree("/tmp/bi/bst", ignore_errors=True)
        t = time.perf_counter(); s = extract(p, cohort, "/tmp/bi/bst", progress=False, qa=False); res[mode].append(time.perf_counter() - t)
print(json.dumps({m: {"median": statistics.median(v), "min": min(v)} for m, v in res.items()}), s["slides"][0]["tiles"], s["rows"])
