"""Single-device model code: no distributed, tracking or data-loading imports here."""
