"""The vision classification task (``vision-digits``): tiny tier on sklearn digits, real tier on HF image models."""
