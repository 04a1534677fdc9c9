#!/bin/sh
# RUSTC_WRAPPER used by mutants.sh: adds `--cfg kmem_mutant="$KMEM_MUTANT"` to the rustc
# invocations that compile the `kmem` crate only, so that switching mutants rebuilds kmem and
# the models but not loom and its dependencies (a RUSTFLAGS change would rebuild everything).
rustc="$1"
shift
case " $* " in
*" --crate-name kmem "*)
    if [ -n "$KMEM_MUTANT" ]; then
        exec "$rustc" "$@" --cfg "kmem_mutant=\"$KMEM_MUTANT\""
    fi
    ;;
esac
exec "$rustc" "$@"
