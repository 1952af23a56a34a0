"""The feature cache: the store on disk (``store``), the plan (``plan``) and the cached tensors
(``features``); ``python -m tlsweep.cache list|clear`` shows and empties the cache folder."""
