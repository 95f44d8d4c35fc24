#!/usr/bin/env bash
# Bad inputs of issue 30 (defects 8 and 9) through the CLI, one command each: prints per case the exit code,
# whether stderr holds a traceback, how long stderr is, and whether the command's --out folder was left behind;
# then the count of tracebacks and of leftover folders. Every case should exit 2 with one line and leave nothing.
#
#   scripts/probe_bad_inputs.sh            # uses `ltsam` on PATH (or LTSAM="python -m ltsam")
#
# It trains two tiny digits runs (a few seconds each) as fixtures and builds timm's/open_clip's small test models;
# no network is used (the hub case checks that an unreachable hub fails fast). Runs in a temporary folder.
set -u
LTSAM=${LTSAM:-ltsam}
PY=${PY:-python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ltsam-probe.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 1
FAST=(--dataset digits --epochs 1 --batch-size 64 --no-progress)
VIT=(--arch timm:test_vit --dataset digits --epochs 1 --batch-size 64 --no-progress --optimizer sgd)
tracebacks=0; leftovers=0; total=0

probe() {  # probe NAME OUT_FOLDER_OR_- COMMAND...
  local name=$1 out=$2; shift 2
  local rc tb left=no
  timeout 300 "$@" >"$WORK/stdout" 2>"$WORK/stderr"; rc=$?
  if grep -q Traceback "$WORK/stderr"; then tb=yes; tracebacks=$((tracebacks + 1)); else tb=no; fi
  if [ "$out" != - ] && [ -e "$out" ]; then left=yes; leftovers=$((leftovers + 1)); rm -rf "$out"; fi
  total=$((total + 1))
  printf '%-34s exit %-3s traceback %-3s stderr %9s bytes  folder left %s\n' "$name" "$rc" "$tb" \
    "$(wc -c <"$WORK/stderr")" "$left"
}

# -- fixtures --------------------------------------------------------------------------------------------------
$PY - <<'EOF'
import json, pickle, torch
open("deep.json", "w").write("[" * 100000 + "]" * 100000)
levels = ["- &l0 [" + ", ".join(["lol"] * 9) + "]"]
levels += [f"- &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 7)]
def indented(n): return "".join(" " * n + line + "\n" for line in levels)
open("bomb.yaml", "w").write("lr:\n" + indented(2))
open("grid_bomb.yaml", "w").write("configs:\n  a:\n    lr:\n" + indented(6))
open("grid.yaml", "w").write("configs:\n  a: {dataset: digits, epochs: 1}\n")
json.dump({"members": [{"config": "bomb.yaml", "out": "m0"}]}, open("members_bomb.json", "w"))
open("ok.yaml", "w").write("dataset: digits\nepochs: 1\nbatch_size: 64\n")
json.dump({"members": [{"config": "ok.yaml", "out": "dup"}, {"config": "ok.yaml", "out": "dup"}]},
          open("members_dup.json", "w"))
open("garbage.safetensors", "wb").write(b"\x00\x01not a safetensors file" * 10)
open("garbage.pt", "wb").write(b"\x00\x01not a checkpoint" * 10)
from safetensors.torch import save_file
save_file({"w": torch.zeros(1000)}, "whole.safetensors")
data = open("whole.safetensors", "rb").read()
open("truncated.safetensors", "wb").write(data[: len(data) // 2])
class Evil:
    def __reduce__(self):
        return (print, ("pwned",))
torch.save({"x": Evil()}, "evil.pt")
EOF
$LTSAM train "${FAST[@]}" --out parent_ldam >/dev/null 2>&1 || echo "fixture: parent run failed"

# -- defect 8 ----------------------------------------------------------------------------------------------------
probe "seeds -1 2"                  out $LTSAM train "${FAST[@]}" --seeds -1 2 --out out
probe "seeds 0 2^32"                out $LTSAM train "${FAST[@]}" --seeds 0 4294967296 --out out
probe "truncated .safetensors"      out $LTSAM train "${VIT[@]}" --pretrained truncated.safetensors --out out
probe "garbage .safetensors"        out $LTSAM train "${VIT[@]}" --pretrained garbage.safetensors --out out
probe "pickle as clip: weights"     out $LTSAM train --arch clip:RN50 --dataset digits --epochs 1 --no-progress \
                                        --pretrained evil.pt --out out
probe "10^5-deep JSON --members"    - $LTSAM train --members deep.json
probe "10^5-deep JSON --config"     out $LTSAM train --config deep.json --out out
probe "YAML alias bomb --config"    out $LTSAM train --config bomb.yaml --out out
probe "YAML alias bomb members"     m0 $LTSAM train --members members_bomb.json
probe "YAML alias bomb sweep grid"  sw $LTSAM sweep grid_bomb.yaml --out sw --dry-run
probe "--adapter-dim 10^9"          out $LTSAM train "${VIT[@]}" --pretrained none --tune adapter \
                                        --adapter-dim 1000000000 --out out
probe "--input-size 100000"         out $LTSAM train "${VIT[@]}" --pretrained none --input-size 100000 --out out
probe "--threads 100000"            out $LTSAM train "${FAST[@]}" --threads 100000 --out out
probe "--ldam-s 0"                  out $LTSAM train "${FAST[@]}" --loss ldam --ldam-s 0 --out out
probe "--margin -1"                 out $LTSAM train "${FAST[@]}" --loss ldam --margin -1 --out out
probe "--sse-gamma 2"               out $LTSAM train "${FAST[@]}" --optimizer sse_sam --sse-gamma 2 --out out
probe "--method glmc with clip:"    out $LTSAM train --method glmc --arch clip:ViT-B-16 --dataset digits --out out
probe "members naming a folder 2x"  dup $LTSAM train --members members_dup.json

# -- defect 9 ----------------------------------------------------------------------------------------------------
probe "--pretrained missing file"   out $LTSAM train "${VIT[@]}" --pretrained no_such.pt --out out
probe "--pretrained garbage .pt"    out $LTSAM train "${VIT[@]}" --pretrained garbage.pt --out out
probe "--pretrained hub (offline)"  out $LTSAM train "${VIT[@]}" --pretrained hub --out out
probe "--lora-targets none match"   out $LTSAM train "${VIT[@]}" --pretrained none --tune lora \
                                        --lora-targets no_such_layer --out out
probe "--device cuda (no GPU)"      out $LTSAM train "${FAST[@]}" --device cuda --out out
probe "--seeds 0 1 --device cuda"   out $LTSAM train "${FAST[@]}" --seeds 0 1 --device cuda --out out
probe "--seeds one-by-one cuda"     out $LTSAM train "${VIT[@]}" --pretrained none --seeds 0 1 --device cuda \
                                        --out out
probe "tau-norm on a cosine head"   out $LTSAM finetune parent_ldam --stage tau-norm --out out
probe "--emit-sbatch to a bad path" sw $LTSAM sweep grid.yaml --out sw --executor slurm \
                                        --emit-sbatch /no/such/dir/job.sh

echo "cases: $total   with a traceback: $tracebacks   leaving a folder: $leftovers"
