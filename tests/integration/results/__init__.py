"""Result images: downloading them and storing them."""
