"""Training: everything only training needs. Imports instant3d; instant3d never imports training."""
