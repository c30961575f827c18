"""From a triplane to pixels: cameras, volume rendering, the fast baked preview, shading and colour."""
