"""The review page (``stylestream ui``): live labels with their photos, filters, corrections, the model's record.

Modules: :mod:`.server` (app and serving), :mod:`.routes` (HTTP), :mod:`.security` (CSP, sign-in, CSRF),
:mod:`.store` and :mod:`.live` (labels from Redis, new ones to every open page), :mod:`.cards` (what a label
looks like on the page, filters), :mod:`.corrections` (feedback records), :mod:`.models` (the model page).
"""
