"""Support code of the Model Selector module: the subprocess job runner (:mod:`.jobs`) and the self-test's
data (:mod:`.selftest`)."""
