# lecture 7's RETRAIN cells other than sdcourse-tiny itself, as the notebook runs them (on the branch's shipped model)
import json, time
from sdcourse.core import cache_dir, results_path, shipped_path, write_json
from sdcourse.data import PHRASINGS, HELDOUT_PHRASINGS
from sdcourse.training import adherence_groups, load_pipeline, compare_pixel_latent, train_course_unet
pipe = load_pipeline(device="cpu")
t0 = time.time()
shipped_record = json.loads(shipped_path("sdcourse-tiny", "unet", "training.json").read_text())
trained_on = shipped_record.get("phrasings", ["template"])
phrasings_path = cache_dir("lectures", "07_training") / "phrasings.json"
earlier = results_path(phrasings_path, shipped_path("lectures", "07_training", "phrasings.json"))
phrasings_record = json.loads(earlier.read_text()) if earlier.exists() else {}
groups = {family: ("train", (family,)) for family in PHRASINGS} | {"held-out pairs, templates": ("heldout", ("template",)),
                                                                  "held-out pairs, held-out phrasings": ("heldout", HELDOUT_PHRASINGS)}
phrasings_record[", ".join(trained_on)] = dict(images=200, adherence=adherence_groups(pipe, 200, groups))
write_json(phrasings_record, phrasings_path)
print("phrasings", time.time() - t0, json.dumps(phrasings_record, indent=1), flush=True)
