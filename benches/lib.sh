# Helpers shared by the benchmark scripts (sourced, not run). They expect $W, a work
# folder of the calling script, where each measure's times accumulate in a file.

# ms NAME CMD...: runs CMD after a sync and a settle, appends its wall time to $W/NAME.
ms() {
  local name=$1; shift
  sync; sleep 1
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000000)) >> "$W/$name"
}

# median FILE: the median of the numbers in FILE (a path, or a name below $W).
median() {
  local f=$1; [[ -f $f ]] || f=$W/$1
  sort -n "$f" | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'
}

# ratio A B: A / B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / (b > 0 ? b : 1) }'; }
