"""Run many short script invocations in one Python process that imports torch and transformers once: each
invocation is a fork of it (copy on write), with its own directory, arguments, environment and output file, and
runs the script as __main__ exactly as `python script.py args` would, up to its exit code. For runs that stop early
(a user's mistake): importing torch is most of such a run. Usage: python forked.py jobs.json; each job
{"script", "args", "cwd", "env", "out"}; writes <out>.code with the exit code."""

import json
import os
import runpy
import sys
import traceback

import torch  # noqa: F401  (imported once, before the forks)
import transformers  # noqa: F401
import tyro  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common.data, common.models, common.parallel, common.runs, common.sampling, common.scoring, common.task  # noqa


def run(job):
    """In the forked child: the script as __main__; the exit code as Python would give it."""
    os.chdir(job["cwd"])
    os.environ.update({k: v for k, v in job["env"].items() if v is not None})
    for k in [k for k, v in job["env"].items() if v is None]:
        os.environ.pop(k, None)
    out = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.argv = [job["script"], *job["args"]]
    sys.path[0] = os.path.dirname(job["script"])
    code = 0
    try:
        runpy.run_path(job["script"], run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    jobs = json.loads(open(sys.argv[1]).read())
    running = {}
    for job in jobs + [None]:
        while running and (job is None or len(running) >= 2):  # two at a time: the machine's cores
            pid, status = os.wait()
            done = running.pop(pid)
            with open(done["out"] + ".code", "w") as f:
                f.write(str(os.waitstatus_to_exitcode(status)))
        if job is None:
            break
        pid = os.fork()
        if pid == 0:
            os._exit(run(job))
        running[pid] = job
