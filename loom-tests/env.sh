# The build environment of every loom run, sourced by run.sh and mutants.sh so that the mutant
# runs build exactly like the clean ones: release mode with debug assertions and overflow checks
# on (the models rely on them to turn counter underflows into panics), --cfg loom, and the
# preemption bound (LOOM_MAX_PREEMPTIONS, default 2; 3 for a deeper run).
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export RUSTFLAGS="--cfg loom --cfg crossbeam_loom"
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=0
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
