#!/usr/bin/env bash
# Pull a 1 GiB blob over loopback from a local docker-registry, digest check
# included, with fetch-blob vs `curl -o file` + `sha256sum` in the same run.
#
#   scripts/bench-pull.sh [SIZE_MIB=1024] [RUNS=3]
#
# Prints the best of RUNS for each, and the ratios. Two comparisons:
#   fetch-blob --no-fsync  vs  curl -o + sha256sum          (neither syncs)
#   fetch-blob (fsync)     vs  curl -o + sha256sum + sync   (both durable)
# Extra fetch-blob flags can be given in FETCH_FLAGS (e.g. "--parallel 4").
# BASE_BIN=/path/to/an/older/fetch-blob also measures that binary in the same
# runs (before/after comparisons on a shared, noisy machine).
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=${1:-1024}
runs=${2:-3}
cargo build --release -q -p fetch-blob
bin=target/release/fetch-blob

eval "$(scripts/registry-test-env.sh start)"
work=$(mktemp -d /tmp/llpipe-bench.XXXXXX)
cleanup() { scripts/registry-test-env.sh stop; rm -rf "$work"; }
trap cleanup EXIT

repo=bench/blob
echo "# generating and pushing a ${size_mib} MiB blob" >&2
head -c "$((size_mib << 20))" /dev/urandom >"$work/src.blob"
digest=sha256:$(sha256sum "$work/src.blob" | cut -d' ' -f1)
printf '{}' >"$work/config.json"
cdigest=sha256:$(sha256sum "$work/config.json" | cut -d' ' -f1)
upload() { # file digest
    local loc
    loc=$(curl -sfi -X POST "$REGISTRY_URL/v2/$repo/blobs/uploads/" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$1" "$loc&digest=$2" >/dev/null
}
upload "$work/src.blob" "$digest"
upload "$work/config.json" "$cdigest"
size=$(stat -c %s "$work/src.blob")
cat >"$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"$cdigest","size":2},"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"$digest","size":$size}]}
JSON
curl -sf -X PUT -H 'Content-Type: application/vnd.docker.distribution.manifest.v2+json' \
    --data-binary @"$work/manifest.json" "$REGISTRY_URL/v2/$repo/manifests/latest" >/dev/null
rm -f "$work/src.blob"

now() { date +%s.%N; }
best() { printf '%s\n' "$@" | sort -g | head -1; }
# runs a command under /usr/bin/time; appends its CPU seconds (user+sys) to $work/cpu.TAG
cpu() {
    local tag=$1
    shift
    /usr/bin/time -f '%U %S' -o "$work/t" "$@"
    awk '{print $1 + $2}' "$work/t" >>"$work/cpu.$tag"
}
peer=() peer_sync=() ours=() ours_sync=() base=() base_sync=()
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for i in $(seq "$runs"); do
    rm -f "$work/curl.blob"
    t0=$(now)
    cpu curl curl -sf -o "$work/curl.blob" "$REGISTRY_URL/v2/$repo/blobs/$digest"
    cpu sum sha256sum "$work/curl.blob" >"$work/sum"
    t1=$(now)
    sync "$work/curl.blob"
    t2=$(now)
    got=sha256:$(cut -d' ' -f1 "$work/sum")
    [[ "$got" == "$digest" ]] || { echo "curl got $got" >&2; exit 1; }
    echo "$(tail -1 "$work/cpu.curl") + $(tail -1 "$work/cpu.sum")" | bc >>"$work/cpu.peer"
    peer+=("$(echo "$t1 - $t0" | bc)")
    peer_sync+=("$(echo "$t2 - $t0" | bc)")
    rm -f "$work/curl.blob"

    modes=(nofsync fsync)
    [[ -n "${BASE_BIN:-}" ]] && modes+=(base_nofsync base_fsync)
    for mode in "${modes[@]}"; do
        rm -rf "$work/store"
        flags=(${FETCH_FLAGS:-})
        [[ $mode == *nofsync ]] && flags+=(--no-fsync)
        b=$bin
        [[ $mode == base_* ]] && b=$BASE_BIN
        t0=$(now)
        OLLAMA_MODELS="$work/store" cpu "$mode" "$b" "${flags[@]}" "$REGISTRY_URL/$repo:latest" >/dev/null
        t1=$(now)
        [[ -f "$work/store/blobs/${digest/:/-}" ]] || { echo "fetch-blob stored nothing" >&2; exit 1; }
        t=$(echo "$t1 - $t0" | bc)
        case $mode in
        nofsync) ours+=("$t") ;;
        fsync) ours_sync+=("$t") ;;
        base_nofsync) base+=("$t") ;;
        base_fsync) base_sync+=("$t") ;;
        esac
    done
    rm -rf "$work/store"
    echo "# run $i: curl+sha256sum ${peer[-1]}s (+sync ${peer_sync[-1]}s)  fetch-blob --no-fsync ${ours[-1]}s  fetch-blob ${ours_sync[-1]}s${BASE_BIN:+  base --no-fsync ${base[-1]}s  base ${base_sync[-1]}s}  load $(cut -d' ' -f1 /proc/loadavg)" >&2
done

p=$(best "${peer[@]}") ps=$(best "${peer_sync[@]}") o=$(best "${ours[@]}") os=$(best "${ours_sync[@]}")
cp=$(best $(cat "$work/cpu.peer")) co=$(best $(cat "$work/cpu.nofsync"))
mib_s() { echo "scale=0; $size / 1048576 / $1" | bc; }
echo "blob: ${size_mib} MiB over loopback from docker-registry, best of $runs, $(nproc) cores, fetch-blob ${FETCH_FLAGS:-default flags}, load average $load0 before, $(cut -d' ' -f1-3 /proc/loadavg) after"
printf 'curl -o + sha256sum          %6.3f s  %5s MiB/s\n' "$p" "$(mib_s "$p")"
printf 'fetch-blob --no-fsync        %6.3f s  %5s MiB/s   ratio %.2fx\n' "$o" "$(mib_s "$o")" "$(echo "$p / $o" | bc -l)"
printf 'curl -o + sha256sum + sync   %6.3f s  %5s MiB/s\n' "$ps" "$(mib_s "$ps")"
printf 'fetch-blob (fsync)           %6.3f s  %5s MiB/s   ratio %.2fx\n' "$os" "$(mib_s "$os")" "$(echo "$ps / $os" | bc -l)"
printf 'CPU seconds (user+sys, client side only): curl+sha256sum %.2f, fetch-blob --no-fsync %.2f, ratio %.2fx\n' \
    "$cp" "$co" "$(echo "$cp / $co" | bc -l)"
if [[ -n "${BASE_BIN:-}" ]]; then
    b=$(best "${base[@]}") bs=$(best "${base_sync[@]}") cb=$(best $(cat "$work/cpu.base_nofsync"))
    printf 'base %s --no-fsync  %6.3f s  ratio to curl+sha256sum %.2fx; fsync %6.3f s  ratio %.2fx; CPU %.2f s\n' \
        "$BASE_BIN" "$b" "$(echo "$p / $b" | bc -l)" "$bs" "$(echo "$ps / $bs" | bc -l)" "$cb"
fi
