#!/usr/bin/env bash
# Runs one fuzz target for a fixed time with the settings the committed
# results used, logging to logs/TARGET.log.
#
#   fuzz/run.sh idx_images_raw 600     # ten minutes
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Only stable Rust exists
# here; RUSTC_BOOTSTRAP=1 lets it accept the `-Z` flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

target=${1:?usage: fuzz/run.sh TARGET [SECONDS]}
seconds=${2:-600}
mkdir -p "corpus/$target" logs

# -rss_limit_mb=1024: AddressSanitizer's shadow memory and quarantine alone
#   take a few hundred MB; the parser itself needs little.
# -malloc_limit_mb=32: no single allocation may exceed 32 MiB. Inputs are at
#   most 8 KiB (-max_len), which decompress to at most ~8.5 MB, so a larger
#   allocation can only come from trusting a header (whose sizes go up to
#   the 4 GiB MAX_BODY_BYTES).
# The checkpoint target has its own seeds; its inputs reach serde_json and
#   candle, so it gets the looser limits its runs used (2048 / 64).
# The weights target has its own seeds and a dictionary of the header's JSON
#   tokens; its inputs reach serde_json and candle too, but no allocation
#   beyond 32 MiB is legitimate for an 8 KiB file.
seeds=seeds rss=1024 malloc=32 extra=()
if [ "$target" = checkpoint ]; then
    seeds=checkpoint-seeds rss=2048 malloc=64
elif [ "$target" = weights ]; then
    seeds=weights-seeds rss=2048 malloc=32 extra=(-dict=weights.dict)
fi
status=0
RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz run "$target" "corpus/$target" "$seeds" -- \
    -max_total_time="$seconds" \
    -max_len=8192 \
    -rss_limit_mb="$rss" \
    -malloc_limit_mb="$malloc" \
    -timeout=10 \
    -print_final_stats=1 \
    "${extra[@]}" \
    >"logs/$target.log" 2>&1 || status=$?
grep -E '^(stat::|Done )|^#[0-9]+ +DONE|panicked|ERROR|Failing input' "logs/$target.log" || true
exit "$status"
