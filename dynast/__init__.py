"""DynaST model: configs, generator, discriminator, VGG features, weights I/O, datasets."""
