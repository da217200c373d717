"""The one training loop (:mod:`.loop`), its numeric precision (:mod:`.precision`) and the
CPU allocator set-up (:mod:`.allocator`)."""
