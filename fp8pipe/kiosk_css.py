"""The kiosk's look on the screens kiosks have (1366x768, 1920x1080, 1280x800, 1080x1920).

Landscape: the controls on the left, the picture filling the rest of the screen's height on
the right (with the take-home QR code beside it). Portrait: the controls on top, the picture
below in what is left of the height. Either way the page never scrolls: the picture is sized
from the viewport (vh/vw), not from its pixels. Everything a visitor touches is at least
48 px high (the usual minimum touch target).
"""

KIOSK_CSS = """
footer, .footer {display: none !important}
html, body {overflow: hidden}
.gradio-container {max-width: 100% !important; padding: 8px 16px !important; min-height: 0 !important}
.gradio-container > .main, .gradio-container .wrap.fillable {padding: 0 !important}
#prompt textarea {font-size: 1.5rem !important; line-height: 1.3}
#generate-button {font-size: 1.8rem !important; min-height: 72px}
#start-button {font-size: 2rem !important; min-height: 96px}
#attract-title h1 {font-size: 3rem; text-align: center; margin: 0}
#attract-image {height: calc(100vh - 220px) !important}
#style label {font-size: 1.2rem; min-height: 48px; display: flex; align-items: center}
#ideas button {min-height: 48px; font-size: 1.1rem}
#vocabulary p {font-size: 0.95rem; margin: 0}
#status p {font-size: 1.3rem; margin: 0}
#result-image img, #attract-image img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated}
#takehome-qr img {image-rendering: pixelated}
#takehome-note p {font-size: 1.1rem; text-align: center; margin: 0}
#kiosk-row {flex-wrap: nowrap; align-items: flex-start}
#kiosk-controls, #kiosk-picture, #kiosk-takehome {gap: 8px}
#kiosk-takehome {flex: 0 0 200px !important; min-width: 200px !important}
/* landscape: the picture takes the screen's height */
#result-image {height: calc(100vh - 40px) !important}
@media (orientation: portrait) {
  #kiosk-row {flex-direction: column; flex-wrap: nowrap}
  #kiosk-controls, #kiosk-picture {width: 100% !important; flex: none !important}
  #kiosk-picture-row {flex-wrap: nowrap}
  #result-image {height: min(calc(100vw - 260px), calc(100vh - 560px)) !important}
}
"""
