#!/usr/bin/env bash
# MediaPipe Holistic poses for a whole corpus of videos, in parallel and resumable.
#
#   scripts/extract_poses.sh VIDEO_DIR POSE_DIR [JOBS]
#
# Every video under VIDEO_DIR (.mp4 .mov .webm .avi .mkv, recursively) gets POSE_DIR/<same relative path>.pose
# (clip.mp4 -> clip.pose: the CSV layout's pose_dir/<uid>.pose). A .pose that is already there is kept, so a
# rerun does only what is missing (a cut run leaves no half-written .pose). JOBS videos at a time (default:
# the number of CPUs). Runs pose-format's video_to_pose in the extractor environment of --mode=translate
# (made on first use; SLT_JAX_POSE_ENV=DIR picks it, as --pose_env does). Then reports, for the new files,
# videos where nobody or hardly any hands were detected. Run it with the Python that has slt_jax (PYTHON=...).
set -euo pipefail
if [[ $# -lt 2 || $# -gt 3 ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
video_dir="${1%/}"
pose_dir="${2%/}"
jobs="${3:-$(nproc)}"
python="${PYTHON:-python}"
[[ -d "$video_dir" ]] || { echo "extract_poses.sh: no such folder: $video_dir" >&2; exit 2; }
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "extract_poses.sh: JOBS must be a positive number, got '$jobs'" >&2; exit 2; }

video_to_pose="$("$python" -m slt_jax.data.video env)"

# todo: the pairs "video pose" whose .pose is missing (NUL-separated, for xargs); new: those .pose paths;
# written: the ones that exist after the run.
todo="$(mktemp)" new="$(mktemp)" written_list="$(mktemp)"
trap 'rm -f "$todo" "$new" "$written_list"' EXIT
total=0
# The containers of VIDEO_SUFFIXES in slt_jax/data/video.py (tests/test_video.py checks they agree).
while IFS= read -r -d '' video; do
  total=$((total + 1))
  rel="${video#"$video_dir"/}"
  pose="$pose_dir/${rel%.*}.pose"
  if [[ -e "$pose" ]]; then continue; fi
  printf '%s\0%s\0' "$video" "$pose" >> "$todo"
  printf '%s\n' "$pose" >> "$new"
done < <(find "$video_dir" -type f \( -iname '*.mp4' -o -iname '*.mov' -o -iname '*.webm' -o -iname '*.avi' \
                                      -o -iname '*.mkv' \) -print0 | sort -z)
missing="$(wc -l < "$new")"
echo "extract_poses.sh: $total videos in $video_dir, $((total - missing)) already have a .pose in $pose_dir," \
     "extracting $missing with $jobs jobs" >&2

# One video: video_to_pose into a temporary name, renamed when whole; its output kept only when it failed.
status=0
xargs -0 -r -n 2 -P "$jobs" sh -c '
  mkdir -p "$(dirname "$2")"
  if "$0" --format mediapipe -i "$1" -o "$2.part" > "$2.log" 2>&1; then
    mv "$2.part" "$2" && rm -f "$2.log"
  else
    rm -f "$2.part"
    echo "failed: $1 ($(tail -n 1 "$2.log"); the whole output is in $2.log)" >&2
    exit 1
  fi' "$video_to_pose" < "$todo" || status=$?

while IFS= read -r pose; do
  if [[ -e "$pose" ]]; then printf '%s\n' "$pose" >> "$written_list"; fi
done < "$new"
written="$(wc -l < "$written_list")"
echo "extract_poses.sh: wrote $written of $missing .pose files" >&2
# Detection report of the new files (nobody detected: error; few hands: warning). It does not change the status:
# such a .pose is what the video holds, and training counts it as a skipped row.
if (( written > 0 )); then
  "$python" -m slt_jax.data.video check < "$written_list"
fi
if (( written < missing )); then
  echo "extract_poses.sh: $((missing - written)) videos failed (above); rerun to retry only those" >&2
  exit 1
fi
exit "$status"
