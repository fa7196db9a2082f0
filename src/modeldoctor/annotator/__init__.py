"""``modeldoctor annotate``: draw object boxes or coarse masks in the browser for the images that need them."""
