# Sourced by the device scripts (gpu_pipeline.sh, gpu_runs.sh, gpu_teacher_sweep.sh): the
# carried data, student and binary put in place, libtorch found. It replaces
# models/all-MiniLM-L6-v2 with the carried fp16 copy, so it runs only on the device machine.
[ -n "${OUT:-}" ] || { echo "$0: run on the device machine (\$OUT is unset)" >&2; exit 2; }
export OUT
mkdir -p "$OUT" ../shared/data models
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')
tar xzf .device/data.tgz -C ../shared/data
rm -rf models/all-MiniLM-L6-v2 && cp -r .device/minilm models/all-MiniLM-L6-v2
gunzip -c .device/distill.gz > /tmp/distill && chmod +x /tmp/distill
