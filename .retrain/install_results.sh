#!/bin/bash
# Copy the branch's RETRAIN results from the cache (/tmp/x24) into data/ of /work/w24, file for file as shipped; list what is missing.
set -u
C=/tmp/x24/lectures; D=/work/w24/data
copy() { if [ -e "$1" ]; then mkdir -p "$(dirname "$2")"; rm -rf "$2"; cp -r "$1" "$2"; find "$2" -name sdcourse_manifest.json -delete; echo "ok   $2"; else echo "MISSING $1"; fi; }
for f in samplers guidance multistep; do copy $C/08_sampling/$f.json $D/lectures/08_sampling/$f.json; done
for f in lowrank limits adaptation; do copy $C/10_lora/$f.json $D/lectures/10_lora/$f.json; done
for f in negative stars; do copy $C/10_lora/$f $D/lectures/10_lora/$f; done
copy $C/12_evaluation/settings.json $D/lectures/12_evaluation/settings.json
for f in star.safetensors thing.safetensors ablation.json shootout.json; do copy $C/13_personalisation/$f $D/lectures/13_personalisation/$f; done
copy $C/14_control/measurements.json $D/lectures/14_control/measurements.json
copy $C/14_control/sdcourse-tiny-controlnet $D/sdcourse-tiny-controlnet
for f in metrics.json lcm-training.json measurements.json flow-unet; do copy $C/15_fewer_steps/$f $D/lectures/15_fewer_steps/$f; done
copy $C/15_fewer_steps/sdcourse-tiny-lcm-lora $D/sdcourse-tiny-lcm-lora
echo "check against git status: every shipped file should be modified, none new or deleted unless intended"
