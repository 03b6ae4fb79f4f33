"""Support code of the Model Selector module: child processes (:mod:`.processes`) and the jobs that run
the library's commands in them (:mod:`.jobs`), result files to and from MRML nodes (:mod:`.nodes`), what the
panel shows (:mod:`.presentation`), the library's location (:mod:`.environment`), Python packages
(:mod:`.dependencies`), startup additions to the application (:mod:`.application`), the stand-ins used
without the application (:mod:`.headless`) and the self-test's data (:mod:`.selftest`)."""
