"""The kiosk's look on the screens kiosks have (1366x768, 1920x1080, 1280x800, 1080x1920).

Landscape: the controls on the left, the picture filling the rest of the screen's height on
the right (with the take-home QR code beside it). Portrait: the controls on top, the picture
below in what is left of the height, its QR code under it. Either way the page never scrolls: the picture is sized
from the viewport (vh/vw), not from its pixels. Everything a visitor touches is at least
48 px high (the usual minimum touch target). While a picture is drawn, a progress bar sits
over the box where it will appear (progress_html).
"""

KIOSK_CSS = """
footer, .footer {display: none !important}
.gradio-container {max-width: 100% !important; padding: 8px 16px !important; min-height: 0 !important}
.gradio-container > .main, .gradio-container .wrap.fillable {padding: 0 !important}
#prompt textarea {font-size: 1.4rem !important; line-height: 1.3}
#generate-button {font-size: 1.8rem !important; min-height: 64px}
#start-button {font-size: 2rem !important; min-height: 96px}
#attract-title h1 {font-size: 3rem; text-align: center; margin: 0}
#attract-image {height: calc(100vh - 220px) !important}
#style label {font-size: 1.15rem; min-height: 48px; display: flex; align-items: center; padding: 0 10px !important}
#ideas button {min-height: 48px; font-size: 1.1rem}
#vocabulary p {font-size: 0.85rem; line-height: 1.35; margin: 0}
#status p {font-size: 1.3rem; margin: 0}
#result-image img, #attract-image img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated}
#takehome-qr img {image-rendering: pixelated}
#takehome-note p {font-size: 1.1rem; text-align: center; margin: 0}
#kiosk-row {flex-wrap: nowrap; align-items: flex-start}
#kiosk-controls, #kiosk-picture, #kiosk-takehome {gap: 8px}
#kiosk-takehome {flex: 0 0 200px !important; min-width: 200px !important}
/* landscape: the picture takes the screen's height */
#result-image {height: calc(100vh - 40px) !important}
#kiosk-picture {position: relative}
#drawing {position: absolute !important; left: 5%; right: 5%; width: auto !important; bottom: 32px; z-index: 20; background: rgba(255, 255, 255, 0.92);
  border-radius: 12px; padding: 12px 20px; box-shadow: 0 2px 12px rgba(0, 0, 0, 0.25)}
#drawing p {font-size: 1.4rem; margin: 0 0 8px 0; text-align: center}
#drawing .bar {height: 16px; border-radius: 8px; background: #e5e7eb; overflow: hidden}
#drawing .bar div {height: 100%; background: #f97316; transition: width 0.2s}
@media (orientation: portrait) {
  #kiosk-row {flex-direction: column; flex-wrap: nowrap}
  #kiosk-controls, #kiosk-picture {width: 100% !important; flex: none !important}
  #kiosk-picture-row {flex-direction: column; flex-wrap: nowrap}
  #result-image {height: min(calc(100vw - 48px), calc(100vh - 820px)) !important; flex: none !important}
  #kiosk-takehome {align-items: center; flex: none !important; width: 100% !important}
}
"""


def progress_html(step: int, total: int) -> str:
    """The bar over the picture's box: "Getting ready" before the first step, then step n of m."""
    words = f"Drawing your picture: step {step} of {total}" if total else "Getting ready..."
    share = round(100 * step / total) if total else 0
    return f'<p>{words}</p><div class="bar" role="progressbar" aria-valuenow="{share}" aria-valuemin="0" aria-valuemax="100"><div style="width: {share}%"></div></div>'
