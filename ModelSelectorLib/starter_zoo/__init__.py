"""The starter zoo: the real models bundled with ModelSelector, as recipes (:mod:`.recipes`) and the resumable
build that trains them, makes their prototypes and indexes them (:mod:`.build`)."""
