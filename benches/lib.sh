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

# msk NAME CMD...: like ms, and appends the peak RSS (KB) of CMD to $W/NAME.kb.
msk() {
  local name=$1; shift
  ms "$name" /usr/bin/time -f %M -o "$W/$name.last" "$@"
  cat "$W/$name.last" >> "$W/$name.kb"
}

# scaled_tree TREE N DIR: N copies of TREE under DIR/c1 … DIR/cN, each file of copy i
# with the byte i appended, so no two copies share content (a tree N times as large).
scaled_tree() {
  local tree=$1 n=$2 dir=$3
  mkdir -p "$dir"
  for i in $(seq "$n"); do
    cp -a "$tree" "$dir/c$i"
    find "$dir/c$i" -type f -print0 |
      xargs -0 perl -e 'for (@ARGV) { open(F, ">>", $_) or die "$_: $!"; print F "'"$i"'"; close F }'
  done
}
