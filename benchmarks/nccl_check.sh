#!/bin/bash
# The NCCL path of engine.distributed on a GPU machine: the same small LocFedMix-SL run in one plain process and
# under torchrun (one rank per GPU, NCCL), then the two metrics.csv compared. Writes benchmarks/results/nccl/.
#     bash benchmarks/nccl_check.sh            # as many ranks as this machine has GPUs
set -euo pipefail
out=benchmarks/results/nccl
work=$(mktemp -d)
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
[ "$gpus" -ge 1 ] || { echo "nccl_check: no GPU here" >&2; exit 2; }
mkdir -p $out
cat > $work/run.toml <<'T'
algorithm = "locfedmix"
dataset = "fashion-mnist"
n_clients = 4
samples_per_client = 200
rounds = 2
batch_size = 32
[engine]
device = "cuda"
[eval]
batch_size = 1000
T
python3 -m locfedmix run --config $work/run.toml --out $work/plain --no-progress > $out/plain.log 2>&1
python3 -m torch.distributed.run --standalone --nproc_per_node=$((gpus < 4 ? gpus : 4)) -m locfedmix run \
    --config $work/run.toml --out $work/dist --no-progress --set engine.distributed=true > $out/dist.log 2>&1
cp $work/plain/metrics.csv $out/plain.csv
cp $work/dist/metrics.csv $out/dist.csv
nvidia-smi --query-gpu=name --format=csv,noheader > $out/device.txt
echo "ranks: $((gpus < 4 ? gpus : 4))" >> $out/device.txt
if cmp -s $out/plain.csv $out/dist.csv; then echo "identical" | tee -a $out/device.txt; else diff $out/plain.csv $out/dist.csv | tee -a $out/device.txt; fi
