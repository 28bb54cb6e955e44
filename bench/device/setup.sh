#!/usr/bin/env bash
# On the device machine, sourced at the start of every call: install the carried wheels
# once per held machine (joined from their parts), then set the environment.
#   . bench/device/setup.sh
if [ ! -f /tmp/site/.done ]; then
  if ls /tmp/wheels/*.part-00 >/dev/null 2>&1; then
    (cd /tmp/wheels && for p in *.part-00; do b=${p%.part-00}; cat "$b".part-* > "$b" && rm "$b".part-*; done)
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/wheels/*.whl && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 BENCH_WORK=/tmp/bench-work
# No hub: a tokenizer load that tries it waits on timeouts there.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# NVLink multicast stays off (device KINDS.md): set here too, for processes that reset their environment.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export AUTOSAFE_VLLM_TEST_MODEL=$PWD/.bench-model/smollm2
