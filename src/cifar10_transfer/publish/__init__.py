"""Publishing, apart from the training core: results tables and the README's generated
sections (``reports``), the slide deck (``slides``), ``make reproduce``'s notebook runner
(``reproduce``) and the upload demo's export (``export``)."""
