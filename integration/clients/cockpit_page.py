#!/usr/bin/python3
"""Drives arbor's Cockpit page in a real browser (Debian's chromium, headless, through
chromedriver and Selenium) the way a user does, inside Cockpit's shell: reads the
status chip and the configuration changes, resets /etc through the confirmation
dialog, clicks Check and Install, and saves a screenshot (of the whole shell) at each
step. Prints one JSON object per step. After "reboot-needed" it waits for a line on
stdin (the test stops the web server) and checks again, to see the page say it is
offline.

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

    def rows(table):
        return len(el(table).find_elements(By.CSS_SELECTOR, "tbody tr"))

    def until(cond, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if cond():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise SystemExit("never: %s; error: %r" % (what, el("error").text))

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
            "apply": el("apply-hint").text,
            "deployments": el("deployments").text,
            "progress": el("progress-text").text if el("progress").is_displayed() else "",
            "error": el("error").text,
            "etc": el("etc").text,
            "dialog": el("reset-text").text if el("reset-dialog").is_displayed() else "",
            "screenshot": path,
        }), flush=True)

    try:
        # The shell, with the page in its frame, as a user reaches it from the menu.
        driver.get(url)
        deadline = time.time() + 60
        while True:
            frames = driver.find_elements(By.CSS_SELECTOR, "iframe[name='cockpit1:localhost/arbor']")
            if frames:
                break
            if time.time() > deadline:
                raise SystemExit("the shell never showed the page's frame")
            time.sleep(0.2)
        driver.switch_to.frame(frames[0])
        s, t = wait_for({"current", "reboot", "available"}, 60)
        until(lambda: "/etc/" in el("etc").text, 30, "the configuration changes listed")
        step("initial", s, t)
        # A factory reset of /etc, confirmed in the dialog.
        el("reset").click()
        until(lambda: el("reset-dialog").is_displayed(), 10, "the reset dialog")
        step("reset-confirm", s, t)
        before = rows("deployments")
        el("reset-confirm").click()
        until(lambda: rows("deployments") == before + 1 and not el("check").get_attribute("disabled"),
              120, "the reset deployment listed")
        until(lambda: "No changes" in el("etc").text, 30, "a pristine /etc")
        s, t = chip()
        step("reset-done", s, t)
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
