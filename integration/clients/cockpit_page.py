#!/usr/bin/python3
"""Drives arbor's Cockpit page in a real browser (Debian's chromium, headless, through
chromedriver and Selenium) the way a user does: reads the status chip, clicks Check and
Install, and saves a screenshot at each step. Prints one JSON object per step. After
"reboot-needed" it waits for a line on stdin (the test stops the web server) and
checks again, to see the page say it is offline.

Usage: cockpit_page.py URL SCREENSHOT_DIR
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main():
    url, shots = sys.argv[1], sys.argv[2]
    os.makedirs(shots, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1000",
              "--disable-dev-shm-usage"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(60)

    def el(id_):
        return driver.find_element(By.ID, id_)

    def chip():
        c = el("chip")
        return c.get_attribute("data-state"), c.text

    def wait_for(states, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                s, t = chip()
                if s in states:
                    return s, t
            except Exception:
                pass
            time.sleep(0.1)
        raise SystemExit("the chip never showed %s; it shows %s; error: %r" % (
            states, chip(), el("error").text))

    def step(name, state, label):
        path = os.path.join(shots, name + ".png")
        driver.save_screenshot(path)
        print(json.dumps({
            "step": name, "state": state, "chip": label,
            "available": el("available").text,
            "deployments": el("deployments").text,
            "progress": el("progress-text").text if el("progress").is_displayed() else "",
            "error": el("error").text,
            "screenshot": path,
        }), flush=True)

    try:
        driver.get(url)
        s, t = wait_for({"current", "reboot", "available"}, 60)
        step("initial", s, t)
        el("check").click()
        s, t = wait_for({"available"})
        # The offer shows as soon as the property changes; the check's transaction
        # ends a moment later, and with it the buttons come back.
        deadline = time.time() + 60
        while not el("install").is_enabled() and time.time() < deadline:
            time.sleep(0.1)
        step("update-available", s, t)
        el("install").click()
        s, t = wait_for({"downloading"})
        # Let the bar move a little so the screenshot shows it under way.
        time.sleep(1.5)
        s, t = chip()
        step("downloading", s, t)
        s, t = wait_for({"reboot", "failed"})
        # The deployments table fills its package changes in after the state.
        deadline = time.time() + 30
        while "tool" not in el("deployments").text and time.time() < deadline:
            time.sleep(0.2)
        step("reboot-needed", s, t)
        # The test stops the web server, then says go: a check now finds it offline.
        sys.stdin.readline()
        el("check").click()
        s, t = wait_for({"offline"}, 120)
        step("offline", s, t)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
