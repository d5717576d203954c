# The import check shared by the sweeps (scripts/common.sh, on the submitting machine,
# before any run) and by each Slurm task (scripts/slurm/task.sh, on its own node).
# Sourced, not run.

_PREFLIGHT='# sweep pre-flight: print each package that does not import
import importlib
for module, package in [("torch", "torch"), ("torchvision", "torchvision"),
                        ("open_clip", "open-clip-torch"), ("dassl", "Dassl")]:
    try:
        importlib.import_module(module)
    except Exception as err:  # a broken install counts as missing too
        print(f"{package} ({type(err).__name__}: {err})")
import gc
gc.freeze()  # the exit then skips a pass over what the imports made (half a second)'

# preflight_missing PYTHON: "pkg (Error: why); pkg2 (...)" for each package PYTHON cannot
# import, or nothing when it imports them all.
preflight_missing() {
    local missing
    missing=$("$1" -c "$_PREFLIGHT" 2>/dev/null) || missing="all (the interpreter failed to start)"
    if [ -n "$missing" ]; then
        echo "$missing" | paste -sd ';' | sed 's/;/; /g'
    fi
}
