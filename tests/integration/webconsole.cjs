// Opens kvm-manager's web console in Debian's headless Chromium (driven by playwright-core,
// NODE_PATH from scripts/playwright) and reports what a person would see, as one JSON line:
//
//   node webconsole.cjs URL SCREENSHOT_PNG [VNC_PASSWORD]
//
// {"security": [..RFB security types offered through /websockify..],
//  "status": "<the page's status text>", "canvas": {"width", "height", "colors"}}
//
// The page's noVNC connects (answering the password prompt when a password is given) and we
// wait until its canvas shows more than one colour: the guest's framebuffer, drawn from VNC
// updates. Then the security types come from a raw RFB handshake over a second WebSocket
// that the page opens to /websockify (server version, our version, then the server's list).
const { chromium } = require('playwright-core');

const [url, screenshot, password] = process.argv.slice(2);
const TIMEOUT_MS = 90_000;

async function securityTypes(page) {
  return page.evaluate(() => new Promise((resolve, reject) => {
    const ws = new WebSocket(location.href.replace(/^http/, 'ws').replace(/[^/]*$/, 'websockify'), ['binary']);
    ws.binaryType = 'arraybuffer';
    let got = new Uint8Array(0);
    let sentVersion = false;
    ws.onmessage = (event) => {
      const more = new Uint8Array(event.data);
      const all = new Uint8Array(got.length + more.length);
      all.set(got);
      all.set(more, got.length);
      got = all;
      if (!sentVersion && got.length >= 12) {
        ws.send(new TextEncoder().encode('RFB 003.008\n'));
        sentVersion = true;
        got = got.slice(12);
      }
      if (sentVersion && got.length >= 1 && got.length >= 1 + got[0]) {
        resolve(Array.from(got.slice(1, 1 + got[0])));
        ws.close();
      }
    };
    ws.onerror = () => reject(new Error('websocket error'));
    ws.onclose = () => reject(new Error('websocket closed before the security types'));
  }));
}

// Distinct colours on noVNC's canvas (sampled on a grid, enough to tell text from a blank).
function canvasColors() {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || canvas.width < 2 || canvas.height < 2) return null;
  const ctx = canvas.getContext('2d');
  const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const seen = new Set();
  for (let y = 0; y < canvas.height; y += 2) {
    for (let x = 0; x < canvas.width; x += 2) {
      const i = (y * canvas.width + x) * 4;
      seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    }
  }
  return { width: canvas.width, height: canvas.height, colors: seen.size };
}

(async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1024, height: 768 } });
    page.on('dialog', (dialog) => dialog.accept(password || ''));
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(url);
    const status = page.locator('#status');
    await page.waitForFunction(() => document.getElementById('status').textContent === 'connected',
      null, { timeout: TIMEOUT_MS });
    await page.waitForFunction(`(${canvasColors.toString()})()?.colors > 1`, null,
      { timeout: TIMEOUT_MS, polling: 250 });
    const canvas = await page.evaluate(canvasColors);
    // A second viewer beside noVNC (qemu shares the display), stopping after the list.
    const security = await securityTypes(page);
    await page.screenshot({ path: screenshot });
    process.stdout.write(JSON.stringify({ security, status: await status.textContent(), canvas, errors }) + '\n');
  } finally {
    await browser.close();
  }
})().catch((e) => {
  process.stderr.write(`webconsole.cjs: ${e.stack || e}\n`);
  process.exit(1);
});
