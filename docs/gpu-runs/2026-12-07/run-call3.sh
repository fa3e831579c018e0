#!/usr/bin/env bash
cd "$(dirname "$0")"
out=$1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
timeout 300 bash gpu-test.sh floor > "$out/gpu-tests.txt" 2>&1; tail -12 "$out/gpu-tests.txt"
