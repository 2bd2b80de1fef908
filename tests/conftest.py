import os, tempfile

# Tests never write into the learner's real cache unless CI chose one.
os.environ.setdefault("SDCOURSE_CACHE", tempfile.mkdtemp(prefix="sdcourse-test-cache-"))
os.environ.setdefault("MPLBACKEND", "Agg")
