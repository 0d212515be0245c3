"""One detector per alarm kind raised from passages: each module holds one kind's `detect` and its Detector."""
