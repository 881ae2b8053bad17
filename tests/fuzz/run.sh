#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on stable
# Rust (the flags cargo-fuzz passes with `-s none`: no sanitizer, which
# would need nightly) and runs each for a bounded time, memory and input
# size, starting from its seed corpus in tests/fuzz/corpus/<target>/.
# Prints one line per target and a table at the end; exits non-zero if any
# target crashed (the input is kept in target/fuzz/artifacts/<target>/).
#
#   tests/fuzz/run.sh [-t SECONDS] [TARGET...]      (default: 10 s, every target)
#
# New inputs libFuzzer finds go to target/fuzz/corpus/<target>/, never into
# the repository. Reproduce a crash with
#   target/fuzz/x86_64-unknown-linux-gnu/release/<target> <crash file>
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
fuzz_dir="$root/tests/fuzz"
target_dir="$root/target/fuzz"
seconds=10
while getopts "t:" opt; do
    case $opt in
        t) seconds=$OPTARG ;;
        *) echo "usage: $0 [-t SECONDS] [TARGET...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

all=(oci_unpack oci_import oci_manifest config_parse config_patch supervisor_control
     supervisor_lines disk_mbr disk_fs module_alias dhcp_lease image_reference)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")

# Largest input each target is given (libFuzzer's -max_len).
max_len() {
    case $1 in
        oci_unpack | oci_import) echo 65536 ;;
        disk_mbr) echo 16384 ;;
        config_parse | config_patch | supervisor_control | supervisor_lines | dhcp_lease) echo 8192 ;;
        disk_fs) echo 4096 ;;
        *) echo 1024 ;;
    esac
}

host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing"
# The fuzz crate is a workspace of its own: it starts from the main
# workspace's lock, so it fuzzes the versions the node is built with (cargo
# adds libfuzzer-sys, pinned in tests/fuzz/Cargo.toml, and drops the rest).
cp "$root/Cargo.lock" "$fuzz_dir/Cargo.lock"
echo "==> building the fuzz targets (instrumented, into $target_dir)"
build_start=$SECONDS
cargo build --release --manifest-path "$fuzz_dir/Cargo.toml" \
    --target "$host" --target-dir "$target_dir" $(printf -- '--bin %s ' "${targets[@]}")
echo "==> built in $((SECONDS - build_start)) s"
bin_dir="$target_dir/$host/release"

# The targets' temporary directories, removed at the end whatever happened.
scratch_parent=/dev/shm
[[ -d $scratch_parent && -w $scratch_parent ]] || scratch_parent=${TMPDIR:-/tmp}
BRAMBLE_FUZZ_SCRATCH=$(mktemp -d "$scratch_parent/bramble-fuzz.XXXXXX")
export BRAMBLE_FUZZ_SCRATCH
trap 'rm -rf "$BRAMBLE_FUZZ_SCRATCH"' EXIT

summary=()
failed=0
for t in "${targets[@]}"; do
    seeds="$fuzz_dir/corpus/$t"
    work="$target_dir/corpus/$t"
    artifacts="$target_dir/artifacts/$t"
    log="$target_dir/logs/$t.log"
    mkdir -p "$seeds" "$work" "$artifacts" "$(dirname "$log")"
    before=$(find "$artifacts" -type f | wc -l)
    status=0
    # The working corpus first: libFuzzer adds what it finds to the first
    # directory and only reads the seeds.
    "$bin_dir/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -max_len="$(max_len "$t")" -timeout=25 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$work" "$seeds" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    [[ -n $execs ]] || execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    result=ok
    if ((status != 0)); then
        result="FAILED (exit $status)"
        ((crashes > 0)) || crashes=1
        failed=1
        echo "---- $t: the end of $log" >&2
        tail -40 "$log" >&2
        ls -t "$artifacts" | head -3 | sed "s|^|---- input: $artifacts/|" >&2
    fi
    line=$(printf '%-20s %12s %8s %8s  %s' "$t" "${execs:-0}" "${cov:-0}" "$crashes" "$result")
    echo "fuzz: $line"
    summary+=("$line")
done

echo
echo "Fuzzing, ${seconds} s per target (libFuzzer on stable Rust, no sanitizer):"
printf '%-20s %12s %8s %8s  %s\n' target "inputs tried" coverage crashes result
printf '%s\n' "${summary[@]}"
exit "$failed"
