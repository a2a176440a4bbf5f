# Points the code's references to the design documents that lived outside
# the repository (../shared/docs/design.md, ../shared/docs/amdim-spec.md) at
# their replacements in docs/. The section numbers of docs/architecture.md
# follow design.md's and those of docs/model.md follow amdim-spec.md's, so a
# reference keeps its numbers, including the "§5–6", "§1–2, §4" and
# "(design §1,\n//! §9)" forms. For the integrator, after merging every
# branch, from the repository root (then delete this script):
#
#   grep -rlIE '(design|spec)(\.md)? §|shared/docs/|the design' . \
#     --exclude-dir=target --exclude-dir=.git --exclude-dir=docs \
#     --exclude=refmap.sed | xargs -r sed -i -f scripts/refmap.sed
#   grep -rnIE '(design|spec)(\.md)? §|shared/docs/' . --exclude-dir=target \
#     --exclude-dir=.git --exclude-dir=docs --exclude=refmap.sed   # expect nothing
#
# Only text followed by "§" (or naming the old files' paths) is touched, so
# "job spec", "the spec's default", "[dist] spec section" and the like stay.

# Paths of the old files (README.md cites `../shared/docs/amdim-spec.md` §1–2).
s|\.\./shared/docs/amdim-spec\.md|docs/model.md|g
s|\.\./shared/docs/design\.md|docs/architecture.md|g

# File-name forms: "amdim-spec.md §3–§6", "design.md §9, §11".
s|\bamdim-spec\.md §|docs/model.md §|g
s|\bdesign\.md §|docs/architecture.md §|g

# Short forms: "design §6", "(design §5–6)", "spec §1–2, §4".
s|\bamdim-spec §|docs/model.md §|g
s|\bdesign §|docs/architecture.md §|g
s|\([^-/[:alnum:]_.]\)spec §|\1docs/model.md §|g
s|^spec §|docs/model.md §|

# Two comments that name the design without a section.
s|Names follow the design's rules|Names follow the rules of docs/architecture.md §9|
s|the names the design promises are there|the names docs/architecture.md §9 lists are there|
