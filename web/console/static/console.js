// Sizes each face-box overlay to its image's own pixels (the boxes are in image pixels).
"use strict";
for (const overlay of document.querySelectorAll("svg.overlay")) {
  const image = overlay.parentElement.querySelector("img");
  const size = () => {
    if (image.naturalWidth) {
      overlay.setAttribute("viewBox", `0 0 ${image.naturalWidth} ${image.naturalHeight}`);
      overlay.setAttribute("preserveAspectRatio", "none");
    }
  };
  if (image.complete) size();
  else image.addEventListener("load", size);
}
