#!/bin/bash
# The README's main-job command, as a user runs it (after the build step): on a machine without a
# GPU it tunes and checks on the CPU backend. Run twice against a fresh cache: the second run must
# use the tuned config and the cached binary (no compile) and still pass the check.
# Usage: readme_main_job_test.sh README.md path/to/jitattn
set -euo pipefail
readme=$1
bin=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export JITATTN_CACHE=$work/cache.db

# The command line under the "# Main job" comment, without the configure/build prefix.
line=$(awk '/^# Main job/{found=1} found && /^cmake /{print; exit}' "$readme")
[ -n "$line" ] || { echo "README has no main-job command under '# Main job'"; exit 1; }
job=${line#*cmake --build build && }
[ "$job" != "$line" ] || { echo "main-job command does not start with the build step: $line"; exit 1; }
job=${job//.\/build\/jitattn/$bin}
echo "main job: $job"

bash -c "$job" > "$work/first.txt" 2>&1 || { cat "$work/first.txt"; echo "FAIL: first run"; exit 1; }
cat "$work/first.txt"
grep -q "result *PASS" "$work/first.txt" || { echo "FAIL: first run did not check PASS"; exit 1; }
grep -q "^tuned 1 spec" "$work/first.txt" || { echo "FAIL: first run did not tune"; exit 1; }

bash -c "$job" > "$work/second.txt" 2>&1 || { cat "$work/second.txt"; echo "FAIL: second run"; exit 1; }
cat "$work/second.txt"
grep -q "result *PASS" "$work/second.txt" || { echo "FAIL: second run did not check PASS"; exit 1; }
grep -q "binary from the cache" "$work/second.txt" || { echo "FAIL: second run compiled again"; exit 1; }
grep -q "config .*\[exact" "$work/second.txt" || { echo "FAIL: second run did not use the tuned config"; exit 1; }
echo "PASS"
