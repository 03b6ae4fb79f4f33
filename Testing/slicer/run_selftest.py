"""Run the Model Selector module's self-test inside Slicer, headless, and exit non-zero on failure.

    Slicer --no-splash --no-main-window --python-script Testing/slicer/run_selftest.py

Adds ``ModelSelector/`` (the module) and the repository root (``ModelSelectorLib``) to ``sys.path`` so the
test runs from a source checkout without building the extension.
"""

import os
import sys
import traceback
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_DIR = os.path.join(ROOT, "ModelSelector")


def main() -> int:
    for folder in (ROOT, MODULE_DIR):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        import ModelSelector

        if not ModelSelector.HAVE_SLICER_APP:
            print("run_selftest: warning: not running inside the Slicer application; testing the logic only")
        suite = unittest.TestSuite([ModelSelector.ModelSelectorTest("runTest")])
        result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
        ok = result.wasSuccessful()
    except Exception:
        traceback.print_exc()
        ok = False
    print("run_selftest: " + ("PASSED" if ok else "FAILED"))
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    status = main()
    try:
        import slicer

        if hasattr(slicer, "app"):
            slicer.util.exit(status)  # quit Slicer with the test's status
    except ImportError:
        pass
    sys.exit(status)
