# Sourced by the device scripts (gpu_pipeline.sh, gpu_runs.sh, gpu_teacher_sweep.sh): the
# carried data, student and binary put in place, libtorch found. It replaces
# models/all-MiniLM-L6-v2 with the carried fp16 copy, so it runs only on the device machine.
[ -n "${OUT:-}" ] || { echo "$0: run on the device machine (\$OUT is unset)" >&2; exit 2; }
export OUT
mkdir -p "$OUT" ../shared/data models
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')
tar xzf .device/data.tgz -C ../shared/data
rm -rf models/all-MiniLM-L6-v2 && cp -r .device/minilm models/all-MiniLM-L6-v2
# A carried file, gzip (NAME.gz) or xz (NAME.xz: smaller, for calls that carry several
# binaries within the 64 MiB), unpacked to DEST as an executable.
unpack() {
  if [ -f ".device/$1.xz" ]; then
    python3 -c "import lzma,shutil,sys;shutil.copyfileobj(lzma.open(sys.argv[1]),open(sys.argv[2],'wb'))" ".device/$1.xz" "$2"
  else
    gunzip -c ".device/$1.gz" > "$2"
  fi
  chmod +x "$2"
}
unpack distill /tmp/distill
